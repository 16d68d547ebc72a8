"""Stand-in platform service used by recon's demo and tests.

``service.py`` is a single-file, standard-library-only HTTP service that behaves like one of the
platform's nine services (``/health``, ``/metrics``, ``/config``, SIGHUP reload, sd_notify).
``build.py`` turns it into deterministic per-service, per-version executable artifacts.
"""
