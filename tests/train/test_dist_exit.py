"""A successful distributed process ends without the interpreter's finalisation (see
`harmonia.train.distributed.exit_after_shutdown`): a gloo worker thread that releases a finished
collective during finalisation aborts the rank with SIGABRT, about once in 100 runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.train.conftest import REPO

_SCRIPT = """
import atexit, sys
import torch
import torch.distributed as dist
from harmonia.train.distributed import exit_after_shutdown, init_distributed

info = init_distributed()
atexit.register(lambda: open(sys.argv[1] + f".finalised{info.rank}", "w").close())
# the collectives a training run ends with: objects gathered for the checkpoint, then sums
out = [None] * info.world_size
dist.all_gather_object(out, {"rank": info.rank})
t = torch.ones(3)
dist.all_reduce(t)
print(f"rank {info.rank} done {out[1 - info.rank]['rank']} {t.tolist()}", end="")  # no newline: must be flushed
exit_after_shutdown(0)
raise SystemExit("not reached")
"""


@pytest.mark.dist
def test_exit_after_shutdown_skips_finalisation_and_flushes(tmp_path):
    script = tmp_path / "end.py"
    script.write_text(_SCRIPT)
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script), str(marker)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0 done 1 [2.0, 2.0, 2.0]" in r.stdout and "rank 1 done 0 [2.0, 2.0, 2.0]" in r.stdout
    assert not list(tmp_path.glob("marker.finalised*"))  # atexit never ran: no finalisation


def test_exit_after_shutdown_without_a_process_group_returns():
    from harmonia.train.distributed import exit_after_shutdown

    assert exit_after_shutdown(0) is None
