"""`semnb.ray_engine`: the Ray engine of `semnb predict` equals the local one, survives a killed actor and a
killed driver, and leaves no Ray process behind. One local Ray (2 CPUs) serves the whole file."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

ray = pytest.importorskip("ray")

import semnb  # noqa: E402
from semnb.data import write_sem_dataset  # noqa: E402
from semnb.data.synth_writer import write_unlabelled_sem  # noqa: E402
from semnb.errors import SemnbInputError  # noqa: E402
from semnb.predictions import Predictions, predict  # noqa: E402
from semnb.ray_engine import predict_with_ray  # noqa: E402
from tests.conftest import REPO_ROOT  # noqa: E402

BATCH = 4  # 51 batches of the 203 images: room to kill something mid-run


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("ray_model")
    model = semnb.fit("segment", write_sem_dataset(work / "sem", n_per_class=2, size=64, seed=0),
                      backbone="semnb-tiny", image_size=64)
    return model.save(work / "model")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_unlabelled_sem(tmp_path_factory.mktemp("ray_images") / "batch", n_per_class=29, size=64) / "images"


@pytest.fixture(scope="module")
def local(model_dir, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray_local") / "out"
    predict(semnb.load_model(model_dir), images, out, batch_size=BATCH)
    return out


def _files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _parts(out):
    return len(list((out / "parts").glob("*.parquet")))


def _each_image_once(out, images):
    table = Predictions(out).table
    assert sorted(table["path"]) == sorted(str(p) for p in images.glob("*.png"))  # none missing, none doubled


def _our_ray_processes(name: str = "ray") -> list[psutil.Process]:
    """The Ray processes this test process started (Ray's own and the workers under its raylet)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if name in " ".join(process.cmdline()):
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


def test_ray_equals_local_byte_for_byte_with_an_actor_killed_mid_run(ray_session, model_dir, images, local, tmp_path):
    out = tmp_path / "ray"
    killed = {}

    def kill_one_actor():
        deadline = time.monotonic() + 900  # a loaded CI machine may take minutes before the first parts exist
        while _parts(out) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        actors = _our_ray_processes("_BatchWriter")
        if actors:
            killed["parts"] = _parts(out)
            actors[0].send_signal(signal.SIGKILL)

    watcher = threading.Thread(target=kill_one_actor)
    watcher.start()
    predict_with_ray(model_dir, images, out, batch_size=BATCH, concurrency=2)
    watcher.join()
    assert 2 <= killed["parts"] < 51  # an actor really died mid-run, and was restarted: the run completed
    _each_image_once(out, images)
    assert len(_files(local)) == 3 + 2 * 203 + 51 + 1  # run, table, csv; maps, masks; parts; report
    assert _files(out) == _files(local)  # one run, for time: the equality and the fault


def test_a_killed_driver_resumes_with_nothing_missing_or_doubled(ray_session, model_dir, images, local, tmp_path):
    out = tmp_path / "ray"
    script = ("import sys; from semnb.ray_engine import predict_with_ray; "
              "predict_with_ray(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=4, address=sys.argv[4])")
    driver = subprocess.Popen([sys.executable, "-c", script, str(model_dir), str(images), str(out),
                               ray.get_runtime_context().gcs_address], cwd=REPO_ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _parts(out) < 3 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert 3 <= _parts(out) < 51 and not (out / "predictions.parquet").exists()  # it really stopped mid-run
    predict_with_ray(model_dir, images, out, batch_size=BATCH)
    _each_image_once(out, images)
    assert _files(out) == _files(local)


def test_after_shutdown_no_ray_process_of_this_test_is_left(ray_session):
    started = _our_ray_processes()
    assert any("raylet" in " ".join(p.cmdline()) for p in started)
    ray.shutdown()
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [" ".join(p.cmdline())[:80] for p in alive]


def test_an_unreachable_ray_address_is_one_clear_line(model_dir, images, tmp_path):
    if ray.is_initialized():  # the engine uses the Ray this process runs; here it must connect
        pytest.skip("needs no Ray running in this process (it runs after the shutdown test)")
    with pytest.raises(SemnbInputError, match="--ray-address 127.0.0.1:9.*cannot be reached"):
        predict_with_ray(model_dir, images, tmp_path / "out", address="127.0.0.1:9")
