"""What a user registers reaches every trial: a script outside the package registers a layer, a backbone and a
dataset, searches on the embedded Ray and on a two-node local cluster, and every row is completed.

The registry contract itself (a taken name, an unknown name, built-ins) is tested for all three registries here too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import nas_flex.data as data
import nas_flex.layers as layers
import nas_flex.models as models
from nas_flex.errors import NasFlexError, UnknownNameError

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# ------------------------------------------------------------------------------------------- registry contract
REGISTRIES = {
    "layer": (layers, "conv", lambda: type("Extra", (layers.KernelLayer,), {})),
    "backbone": (models, "simple", lambda: (lambda conv, in_channels, num_classes: None)),
    "dataset": (data, "digits", lambda: (lambda name, **kw: None)),
}


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_registry_contract(kind):
    module, builtin, make = REGISTRIES[kind]
    entry = make()
    module.register("extra_thing")(entry)
    try:
        assert "extra_thing" in module.available() and builtin in module.available()
        module.register("extra_thing")(entry)  # the same object again: a no-op
        with pytest.raises(NasFlexError, match="'extra_thing' is already registered"):
            module.register("extra_thing")(make())
        with pytest.raises(NasFlexError, match="already registered"):
            module.register(builtin)(make())
        with pytest.raises(NasFlexError, match="built-in .* cannot be unregistered"):
            module.unregister(builtin)
    finally:
        module.unregister("extra_thing")
    assert "extra_thing" not in module.available()
    with pytest.raises(UnknownNameError) as err:
        module.unregister("extra_thing")
    lookup = {"layer": lambda n: layers.build(n, 1, 1), "dataset": lambda n: data.get_dataset(n),
              "backbone": lambda n: models.build({"backbone": n}, in_channels=1, num_classes=2)}[kind]
    with pytest.raises(UnknownNameError) as err:
        lookup(builtin + "x")
    msg = str(err.value)
    assert f"did you mean {builtin!r}" in msg and all(repr(n) in msg for n in module.available())


def test_a_layer_class_keeps_its_one_name():
    from nas_flex.layers.conv import Conv

    with pytest.raises(NasFlexError, match="registered as 'conv'.*subclass"):
        layers.register("my_plain_conv")(Conv)
    assert Conv.kind == "conv" and "my_plain_conv" not in layers.available()


def test_unknown_registered_names_fail_before_launch(tmp_path):
    import nas_flex

    for key, value in (("conv", "my_convv"), ("backbone", "my_nett"), ("dataset", "my_dataa")):
        with pytest.raises(NasFlexError, match=f"unknown {'layer' if key == 'conv' else key} {value!r}"):
            nas_flex.search(lambda trial, k=key, v=value: {k: v, "epochs": 1}, storage=tmp_path / "r", num_samples=1)
    assert not (tmp_path / "r" / "_ray").exists()


@pytest.mark.slow
def test_shipped_entries_load_without_the_user_module(tmp_path):
    """ship() marks a user module that a worker could not import for pickling by value (two processes importing
    Ray's cloudpickle: slow on a loaded machine, though no Ray starts)."""
    pkg = tmp_path / "userside"
    pkg.mkdir()
    (pkg / "my_layers_mod.py").write_text(textwrap.dedent('''
        from nas_flex.layers.conv import Conv

        class Wide(Conv):
            """A user's conv layer."""
    '''))
    code = textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {str(pkg)!r})
        import my_layers_mod, nas_flex.layers as L
        from ray import cloudpickle
        from nas_flex.tune.plugins import collect, ship
        L.register("wide_user")(my_layers_mod.Wide)
        sys.stdout.buffer.write(cloudpickle.dumps(ship(collect())))
    ''')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    blob = subprocess.run([PY, "-c", code], capture_output=True, check=True, env=env, cwd=tmp_path).stdout
    (tmp_path / "blob").write_bytes(blob)
    load = textwrap.dedent('''
        import pickle, sys
        from nas_flex.tune.plugins import install
        import nas_flex.layers as L
        install(pickle.loads(open("blob", "rb").read()))
        assert "my_layers_mod" not in sys.modules or sys.modules["my_layers_mod"].__file__ is None
        layer = L.build("wide_user", 2, 3, kernel_size=3)
        print(type(layer).__name__, layer.kind)
    ''')
    out = subprocess.run([PY, "-c", load], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["Wide", "wide_user"]


# --------------------------------------------------------------------------------------- a user's script, searched
USER_MODULE = '''
"""A user's module beside the script: a dataset builder (not installed anywhere)."""
import nas_flex.data as data
from nas_flex.data import get_dataset


@data.register("my_data", options={"size": 8})
def my_data(name, *, root, image_size, seed, download, size):
    """imagefolder read at a fixed size (the user's own recipe)."""
    return get_dataset("imagefolder", root=root, image_size=size, seed=seed)
'''

USER_SCRIPT = '''
"""A user's search script: a layer and a backbone defined in __main__, a dataset from a module beside it."""
import json, sys
from torch import nn
import nas_flex
from nas_flex.layers import register
from nas_flex.layers.conv import Conv
from nas_flex.models import make_pool, pooling_plan, register as register_backbone
from nas_flex.spaces import SearchSpace
import my_data_module  # registers "my_data"


@register("my_conv")
class MyConv(Conv):
    """The built-in conv, under the user's name."""


@register_backbone("my_net")
class MyNet(nn.Module):
    def __init__(self, conv, in_channels, num_classes, *, width=4, pooling="max"):
        super().__init__()
        (mode,) = pooling_plan(pooling, 1, "my_net")
        first = conv.stem(in_channels, width)
        self.body = nn.Sequential(first, nn.ReLU(), make_pool(mode, width, first), conv(width, width), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.head(self.body(x))


def space(trial):
    conv = trial.suggest_categorical("conv", ["my_conv", "njet"])
    return {"backbone": "my_net", "conv": conv, "kernel_size": 3, "width": 4, "epochs": 1, "batch_size": 8,
            "dataset": "imagefolder" if conv == "my_conv" else "my_data", "data_root": sys.argv[1],
            "image_size": 8, "pooling": "max" if conv == "my_conv" else "safe"}


def own_loop(config, ctx):
    """The user's own training loop: the registered backbone built from the config, trained by hand."""
    import torch

    data = ctx.data()
    model = nas_flex.models.build(config, in_channels=data.input_shape[0], num_classes=data.num_classes)
    model.to(ctx.device)
    opt = torch.optim.Adam(ctx.param_groups(model))
    loader = torch.utils.data.DataLoader(data.train, batch_size=config["batch_size"], shuffle=True)
    xv = torch.stack([data.val[i][0] for i in range(len(data.val))])
    yv = torch.tensor([int(data.val[i][1]) for i in range(len(data.val))])
    for _ in range(ctx.load(model, optimizer=opt), config["epochs"]):
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y) + ctx.regularization(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ctx.constrain(model)
        with torch.no_grad():
            out = model.eval()(xv)
        model.train()
        ctx.report(model, train_loss=float(loss), val_acc=float((out.argmax(1) == yv).float().mean()),
                   val_loss=float(torch.nn.functional.cross_entropy(out, yv)))
        ctx.save(model, optimizer=opt)


if __name__ == "__main__":
    address = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] != "-" else None
    # nas_flex's loop, the user's own (--own-loop), or both, one search after the other (--both-loops)
    loops = {"built-in": None, "own": own_loop}
    names = ["own"] if "--own-loop" in sys.argv else list(loops) if "--both-loops" in sys.argv else ["built-in"]
    for name in names:
        lb = nas_flex.search(SearchSpace(space, sampler="grid"), storage=f"{sys.argv[2]}/{name}", address=address,
                             verbose=0, max_failures=0, trainable=loops[name])
        rows = [{"conv": r.params_conv, "status": r.status, "flops": float(r.flops), "error": str(r.error),
                 "heights": [float(s["height"]) for s in (r.learned_sizes if r.learned_sizes is not None else [])]}
                for r in lb.to_pandas().itertuples()]
        print("ROWS", name, json.dumps(rows))
'''


def _write_user_project(tmp: Path) -> tuple[Path, Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    images = tmp / "images"
    for label, cls in enumerate(("circle", "square")):
        (images / cls).mkdir(parents=True)
        for i in range(8):
            arr = rng.integers(0, 60, size=(10, 10, 3), dtype=np.uint8)
            arr[label * 5:(label + 1) * 5] += 150
            Image.fromarray(arr).save(images / cls / f"{i}.png")
    project = tmp / "project"
    project.mkdir()
    (project / "my_data_module.py").write_text(USER_MODULE)
    (project / "search_it.py").write_text(USER_SCRIPT)
    return project, images


def _check_rows(out: subprocess.CompletedProcess, loop: str) -> None:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith(f"ROWS {loop} "))
    rows = json.loads(line.split(" ", 2)[2])
    assert sorted(r["conv"] for r in rows) == ["my_conv", "njet"]
    for row in rows:
        assert row["status"] == "completed" and row["flops"] > 0, row
    njet = next(r for r in rows if r["conv"] == "njet")
    assert len(njet["heights"]) == 2 and all(h > 0 for h in njet["heights"])  # both N-Jet layers of my_net


def _run_script(project: Path, *args: str, env: dict | None = None, timeout: int = 420):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([PY, "search_it.py", *args], cwd=project, capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.ray
@pytest.mark.slow
def test_registered_plugins_reach_the_embedded_ray(tmp_path):
    """A layer and a backbone from __main__, imagefolder and a user module's dataset, with nas_flex's loop and with
    the user's own (``trainable=``): one script, one search each (a Ray started and shut down by each)."""
    project, images = _write_user_project(tmp_path)
    out = _run_script(project, str(images), str(tmp_path / "runs"), "-", "--both-loops")
    for loop in ("built-in", "own"):
        _check_rows(out, loop)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray
@pytest.mark.slow
def test_registered_plugins_reach_a_two_node_cluster(tmp_path):
    project, images = _write_user_project(tmp_path)
    ray_bin = str(Path(PY).parent / "ray")
    token = subprocess.run([ray_bin, "get-auth-token", "--generate"], capture_output=True, text=True,
                           env={**os.environ, "HOME": str(tmp_path)}).stdout.strip().splitlines()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HOME": str(tmp_path),
           "RAY_TMPDIR": tempfile.mkdtemp(prefix="rt", dir="/tmp")}  # short: Ray's socket paths have a limit
    if token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token[-1])
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    common = ["--num-cpus=1", "--block", "--disable-usage-stats"]  # --include-dashboard is for the head only
    nodes = []
    try:
        nodes.append(subprocess.Popen([ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=false",
                                       *common], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        _wait_for_nodes(ray_bin, port, env, 1)
        nodes.append(subprocess.Popen([ray_bin, "start", f"--address=127.0.0.1:{port}", *common], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        _wait_for_nodes(ray_bin, port, env, 2)  # the search runs on a cluster of two nodes, not on the head alone
        # the user's own loop (trainable=) with their layer, backbone and datasets, on the cluster
        _check_rows(_run_script(project, str(images), str(tmp_path / "runs"), f"127.0.0.1:{port}", "--own-loop",
                                env=env), "own")
    finally:
        for proc in reversed(nodes):
            _stop(proc)


def _wait_for_nodes(ray_bin: str, port: int, env: dict, n: int, timeout: float = 120.0) -> None:
    """Poll ``ray status`` until the cluster lists ``n`` active nodes (instead of sleeping a fixed time)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = subprocess.run([ray_bin, "status", f"--address=127.0.0.1:{port}"], capture_output=True, text=True,
                              env=env, timeout=60).stdout
        active = text.split("Active:", 1)[1].split("Pending:", 1)[0] if "Active:" in text else ""
        if active.count("node_") >= n:
            return
        time.sleep(0.5)
    pytest.fail(f"the test cluster did not reach {n} active node(s) in {timeout:.0f} s:\n{text[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop a ``ray start --block`` node this test started, and the processes of its session (by its group)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
