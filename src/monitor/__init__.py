"""visionops monitoring: Evidently drift jobs on production images (built in a later issue).

Imports only the shared `visionops` package, never Lightning or the Hydra training code.
"""
