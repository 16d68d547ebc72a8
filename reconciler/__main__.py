"""`python -m reconciler` is `recon` (its recorded SSH logins start first: `reconciler.prelogin`)."""

from reconciler.prelogin import main

main()
