"""visionops shared core: what training, serving and monitoring must agree on.

    images, imagestats, preprocess   the one decoder, the image statistics, the evaluation-time preprocessing
    bundle, manifest                 the model bundle contract, dataset manifests
    onnx_runtime, model_store        running an exported model; fetching a registered version (MLflow)
    records, prediction_log          the production-log record (its fields, the monitor's features) and the log
    project                          which MLflow store and which model when a command is not told
    config, errors, cli              every entry point's runner (Hydra / params.yaml), the user error, key=value args
    pyfunc, webui                    the MLflow pyfunc flavour; starting the MLflow and Evidently UIs

Imports nothing of `train`, `serve` or `monitor`, never Lightning or torch. What serving loads
needs numpy, Pillow and orjson at import, and MLflow, ONNX Runtime and PyYAML only inside the
functions that use them: the bento carries this package without the training dependencies.
`config` needs omegaconf (and Hydra for a command line), `pyfunc` MLflow.
"""

__version__ = "0.1.0"
