"""qlgate training: curation and (Q)LoRA training, run as ``python -m training <command>``."""
