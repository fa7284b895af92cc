"""The production-log record is defined once (visionops.records): the bytes written stay those of
the logs already on disk, and what the writer writes is what the monitor reads."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd

from monitor.drift import features
from visionops import records
from visionops.imagestats import STAT_COLUMNS
from visionops.onnx_runtime import softmax, top_k
from visionops.prediction_log import PredictionLog, read_log

# A line the service wrote before the schema had a module of its own (same inputs as below).
OLD_LINE = (b'{"timestamp":"2026-01-01T00:00:00.000000+00:00","request_id":"req-1","model_name":"toy",'
            b'"model_version":"7","width":8.0,"height":8.0,"channels":1.0,"brightness":0.3125,"contrast":0.41,'
            b'"sharpness":0.0123456789,"saturation":0.0,"mean_r":0.3125,"mean_g":0.3125,"mean_b":0.3125,'
            b'"embedding":[0.123457,-2.0,3.333333],"predicted_label":"a","top_score":0.7855970859527588,'
            b'"probabilities":[0.785597,0.17529,0.039113],"image_path":null}\n')
STATS = {"width": 8.0, "height": 8.0, "channels": 1.0, "brightness": 0.3125, "contrast": 0.41,
         "sharpness": 0.0123456789, "saturation": 0.0, "mean_r": 0.3125, "mean_g": 0.3125, "mean_b": 0.3125}


def _record() -> dict:
    probs = softmax(np.asarray([[2.0, 0.5, -1.0]], np.float32))[0]
    best = top_k(probs, ["a", "b", "c"], 3)
    return records.build("req-1", "toy", "7", STATS, np.asarray([0.1234567891, -2.0, 3.3333333333], np.float32),
                         records.classification_outputs(best[0], probs), timestamp="2026-01-01T00:00:00.000000+00:00")


def test_a_record_is_byte_for_byte_what_the_log_held_before():
    assert orjson.dumps(_record(), option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY) == OLD_LINE


def test_the_schema_lists_a_records_fields_in_order():
    assert tuple(_record()) == records.CLASSIFICATION.columns
    assert records.CLASSIFICATION.columns[4:14] == STAT_COLUMNS
    assert set(records.FEATURE_COLUMNS) <= set(records.CLASSIFICATION.columns)


def test_the_monitor_reads_what_the_writer_writes_and_old_logs(tmp_path):
    """An old line and a new record in one log: both read back and scored as features."""
    (tmp_path / "predictions-20260101-old-1.jsonl").write_bytes(OLD_LINE)
    log = PredictionLog(tmp_path)
    log.write([{**_record(), "request_id": "req-2", "timestamp": "2026-01-01T00:00:01.000000+00:00"}])
    log.close()
    table = read_log(tmp_path)
    assert list(table["request_id"]) == ["req-1", "req-2"]
    f = features(table, ["a", "b", "c"])
    assert f.stats.shape == (2, len(STAT_COLUMNS)) and f.emb.shape == (2, 3) and list(f.cls) == [0, 0]
    # the reference is the same table (a parquet file): its columns are the record's
    table.drop(columns=["timestamp"]).to_parquet(tmp_path / "reference.parquet")
    assert set(records.FEATURE_COLUMNS) <= set(pd.read_parquet(tmp_path / "reference.parquet").columns)
