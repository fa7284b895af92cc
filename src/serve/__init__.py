"""visionops serving: the BentoML service for the champion model (built in a later issue).

Imports only the shared `visionops` package, never Lightning or the Hydra training code.
"""
