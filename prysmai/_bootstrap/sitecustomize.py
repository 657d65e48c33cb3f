# prysmai's start-up hook: `prysmai run` puts this folder first on PYTHONPATH with PRYSM_AUTO=1.
# It runs the user's own sitecustomize (if any), then instruments openai; it never stops start-up.
try:
    from prysmai._auto import bootstrap as _prysm_bootstrap
except Exception:  # prysmai is not importable by this interpreter: run unobserved
    pass
else:
    _prysm_bootstrap(__file__)
