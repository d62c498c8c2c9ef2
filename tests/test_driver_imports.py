"""The `relayrl train` driver only starts actors and reads results: importing its modules and
checking a config must not load torch, transformers or DeepSpeed (each actor process loads
what it needs; a driver that loads them too costs about 0.3 GB of the job's memory)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "transformers", "deepspeed")

# The CLI's train path: its modules, the config's preflight, a step's metrics (TensorBoard on).
DRIVER = """
import json, sys
import relayrl.cli, relayrl.cluster.job, relayrl.cluster.job_commands
from relayrl.cluster.preflight import preflight
from relayrl.config_loader import load_config
for placement in ("colocated", "separate"):
    preflight(load_config(None, [
        "model.path=tiny-random", "env.name=arithmetic", f"output.dir={sys.argv[1]}",
        f"rollout.placement={placement}",
    ]))
from pathlib import Path
from relayrl.metrics import MetricsWriter
writer = MetricsWriter(Path(sys.argv[1]) / "metrics", tensorboard=True)
writer.write(1, {"reward/mean": 0.5})
writer.close()
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_the_driver_loads_no_torch(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert sorted(loaded & set(HEAVY)) == []
