"""(3) Data plane: moving a rollouts table from a rollout worker to the learner.

A producer actor builds a ``schemas.ROLLOUTS`` table of the given shape (random token
ids and floats: the content does not matter, the layout does) and ``ray.put``s it; a
consumer actor ``ray.get``s it and reads every value buffer once. Both against a
memcpy of the same number of bytes, measured in the consumer process.
"""

from __future__ import annotations

import time
from typing import List, Tuple

import numpy as np

from benchmarks.common import median, memcpy_gbps


def _table(rows: int, prompt_len: int, resp_len: int):
    import pyarrow as pa

    from crpo_ray import schemas

    rng = np.random.default_rng(0)

    def lists(n, dtype, pa_type):
        flat = (rng.integers(0, 2048, rows * n) if dtype == np.int32 else rng.standard_normal(rows * n)).astype(dtype)
        offsets = pa.array(np.arange(0, rows * n + 1, n, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(flat, type=pa_type))

    cols = {"example_id": pa.array([f"x:{i // 4}" for i in range(rows)]), "dataset": pa.array(["DR"] * rows),
            "label": pa.array(["yes"] * rows), "label_set": pa.array([["yes", "no"]] * rows),
            "group_id": pa.array(np.arange(rows) // 4, type=pa.int64()),
            "prompt_ids": lists(prompt_len, np.int32, pa.int32()),
            "prompt_truncated": pa.array([False] * rows), "sample_index": pa.array(np.arange(rows) % 4, type=pa.int32()),
            "response_ids": lists(resp_len, np.int32, pa.int32()),
            "behavior_logprobs": lists(resp_len, np.float32, pa.float32()),
            "entropies": lists(resp_len, np.float32, pa.float32()), "finish_reason": pa.array(["length"] * rows),
            "policy_version": pa.array([1] * rows, type=pa.int64()), "completion": pa.array(["x" * resp_len] * rows)}
    return schemas.validate(pa.table(cols, schema=schemas.ROLLOUTS), schemas.ROLLOUTS, "bench table")


def _touch(table) -> float:
    """Read every buffer once (sum of bytes viewed as uint8), as a consumer would."""
    total = 0.0
    for col in table.columns:
        for chunk in col.chunks:
            for buf in chunk.buffers():
                if buf is not None and buf.size:
                    total += float(np.frombuffer(buf, dtype=np.uint8)[:: 4096].sum())
    return total


class Producer:
    def __init__(self, rows: int, prompt_len: int, resp_len: int):
        self.table = _table(rows, prompt_len, resp_len)

    def nbytes(self) -> int:
        return self.table.nbytes

    def put(self) -> Tuple[list, float]:
        import ray

        t = time.perf_counter()
        ref = ray.put(self.table)
        return [ref], time.perf_counter() - t


class Consumer:
    def fetch(self, refs: list) -> dict:
        import ray

        t = time.perf_counter()
        table = ray.get(refs[0])
        t1 = time.perf_counter()
        _touch(table)
        t2 = time.perf_counter()
        values = table.column("response_ids").chunk(0).values.buffers()[1]
        return {"get_s": t1 - t, "touch_s": t2 - t1, "values_buffer_mutable": values.is_mutable}

    def memcpy(self, nbytes: int) -> float:
        return nbytes / (memcpy_gbps(nbytes) * 1e9)


def run(shapes: List[Tuple[int, int, int]], repeats: int = 5) -> dict:
    import ray

    prod_cls, cons_cls = ray.remote(num_cpus=0)(Producer), ray.remote(num_cpus=0)(Consumer)
    rows_out = []
    consumer = cons_cls.remote()
    for rows, p_len, r_len in shapes:
        producer = prod_cls.remote(rows, p_len, r_len)
        nbytes = ray.get(producer.nbytes.remote())
        copy_s = ray.get(consumer.memcpy.remote(nbytes))
        samples = []
        for _ in range(repeats + 1):
            refs, put_s = ray.get(producer.put.remote())
            res = ray.get(consumer.fetch.remote(refs))
            samples.append({"put_s": put_s, **res})
            del refs
        samples = samples[1:]
        put_s, get_s = median([s["put_s"] for s in samples]), median([s["get_s"] for s in samples])
        rows_out.append({"rows": rows, "prompt_len": p_len, "response_len": r_len, "bytes": nbytes,
                         "memcpy_s": copy_s, "put_s": put_s, "get_s": get_s,
                         "touch_s": median([s["touch_s"] for s in samples]),
                         "move_over_memcpy": (put_s + get_s) / copy_s, "get_over_memcpy": get_s / copy_s,
                         "zero_copy_read": not samples[0]["values_buffer_mutable"]})
        print(f"[bench] data_plane {rows}x{r_len}: {nbytes / 2**20:.1f} MiB put {put_s * 1e3:.2f} ms get "
              f"{get_s * 1e3:.2f} ms memcpy {copy_s * 1e3:.2f} ms", flush=True)
        ray.kill(producer)
    ray.kill(consumer)
    return {"what": "ray.put of a ROLLOUTS table in a producer actor + ray.get in a consumer actor, "
                    "against one memcpy of table.nbytes in the consumer",
            "rows": rows_out}
