"""What the server's process loads before its port opens: its app module imports no
SciPy (the drift tests that need it run in the tester process, which imports it there),
no TensorFlow and no Keras. Each costs a cold start a second or more of CPU."""

import json
import subprocess
import sys

from tests.support import ROOT

HEAVY = ("scipy", "tensorflow", "keras", "sklearn", "pandas")


def test_importing_the_server_app_loads_no_heavy_package():
    code = (
        "import json, sys\nimport image_finetune.serving.app\n"
        f"print(json.dumps(sorted(set({HEAVY!r}) & {{m.split('.')[0] for m in sys.modules}})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_drift_tests_still_find_scipy_when_they_run():
    import numpy as np

    from image_finetune.monitoring.drift import confidence_drop_test, ks_test

    rng = np.random.default_rng(0)
    statistic, p_value = ks_test(rng.normal(size=200), rng.normal(2.0, size=200))
    assert statistic > 0.5 and p_value < 1e-6
    drop, p_drop = confidence_drop_test(
        rng.dirichlet(np.ones(10) * 0.1, 300), rng.dirichlet(np.ones(10), 300)
    )
    assert drop > 0 and p_drop < 1e-6
