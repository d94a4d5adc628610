"""qlgate's shared core: what the pytest plugin (``qlgate_pytest``) and ``training`` both use.

- ``cases``, ``golden_tree``, ``golden_lock``: the golden case schema, which files a golden set
  is made of, and the lock that makes a vanished case file red;
- ``scoring`` and ``stats``: pure scoring of one answer and the statistics of a gate;
- ``fingerprint`` and ``adapter_identity``: content hashes, computed identically at training
  and at gate time;
- ``errors`` (the plugin's error tree), ``extras`` (a missing optional dependency as one line),
  ``atomic`` (replacing a file atomically).

It imports neither torch nor pytest nor either of its two users (import contracts in
``pyproject.toml``), so either side can depend on it and neither depends on the other's inside.
"""
