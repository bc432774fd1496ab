"""convnext_dense.apis.runner.build_runner: runners of one process do not share a visualizer."""
from __future__ import annotations

from convnext_dense.apis.runner import build_runner, load_config
from tests.conftest import REPO

SEG_DEMO = REPO / 'configs/demo/upernet_convnext_demo.py'


def test_runners_of_one_process_write_into_their_own_work_dirs(tmp_path):
    """mmengine hands a runner the visualizer of an earlier runner with the same name (and
    with it the earlier work_dir); each run here gets its own."""
    runners = {}
    for name in ('first', 'second'):
        cfg = load_config(str(SEG_DEMO))
        cfg.work_dir = str(tmp_path / name)
        runners[name] = build_runner(cfg)
    assert runners['second'].visualizer is not runners['first'].visualizer
    dumped = sorted(path.relative_to(tmp_path).parts[0]
                    for path in tmp_path.rglob('vis_data/config.py'))
    assert dumped == ['first', 'second']
