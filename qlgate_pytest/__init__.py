"""qlgate's pytest plugin: ``pytest --candidate=ADAPTER_DIR`` gates a fine-tuned adapter."""
