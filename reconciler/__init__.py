"""recon: a declarative plan/apply reconciler for a platform's systemd services.

The package follows the pipeline: ``spec`` (load, merge, check) → ``observe`` (read the hosts)
→ ``plan`` (pure diff) → ``render`` (text, JSON, Markdown) → ``apply`` (pyinfra) → ``state``.
"""

__version__ = "0.1.0"
