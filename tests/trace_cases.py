"""Trace fixtures both loader test files use: JSON-lines files, Mooncake rows, and a comparison of
two loads round by round."""

import json

import numpy as np


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mc(ts, n_in, out, ids):
    return {"timestamp": ts, "input_length": n_in, "output_length": out, "hash_ids": ids}


def same_trajectories(a, b):
    """Two lists of trajectories describe the same rounds."""
    assert [t.agent_id for t in a] == [t.agent_id for t in b]
    for x, y in zip(a, b):
        for field in ("num_prompt_tokens", "num_hit_tokens", "num_gen_tokens", "think_time_s"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
        assert x.start_offset_s == y.start_offset_s and x.block_tokens == y.block_tokens
        for i in range(x.num_rounds):
            np.testing.assert_array_equal(x.block_hash_ids(i), y.block_hash_ids(i))
