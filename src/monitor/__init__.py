"""visionops monitoring: drift of the production images, from the service's prediction log.

`python -m monitor.reference` builds the reference and calibrates the thresholds; `python -m
monitor` runs the drift job (`monitor.job`: report, Evidently workspace and dashboard, email);
`python -m monitor.outbox` sends the emails that wait; `python -m monitor.simulate` sends
(corrupted) traffic; `python -m monitor.demo` runs the whole loop.

Imports the shared `visionops` package (the record schema, the runner, the store rule) and
`serve` (the reference is featurised by the serving runtime itself); never `train`, Lightning,
Hydra (but through `visionops.config`'s runner) or torch.
"""
