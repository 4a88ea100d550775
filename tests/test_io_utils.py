"""io_utils.jsonable: plain JSON types out of metadata."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np

from probattr_monitor.io_utils import jsonable


class _WithToDict:
    def to_dict(self):
        return {"k": np.float64(1.5)}


def test_jsonable_converts_containers_numpy_and_objects():
    value = {
        1: np.int64(3),
        "arr": np.arange(3),
        "nested": (np.bool_(True), {np.str_("s")}),
        "path": Path("a/b"),
        "when": dt.date(2024, 5, 1),
        "obj": _WithToDict(),
        "other": complex(1, 2),
        "nan": float("nan"),
    }
    out = jsonable(value)
    assert out["1"] == 3 and type(out["1"]) is int
    assert out["arr"] == [0, 1, 2]
    assert out["nested"] == [True, ["s"]] and type(out["nested"][0]) is bool
    assert out["path"] == str(Path("a/b")) and out["when"] == "2024-05-01"
    assert out["obj"] == {"k": 1.5} and out["other"] == "(1+2j)"
    assert math.isnan(out["nan"])
    json.dumps(out, allow_nan=True)  # every value is a JSON type
