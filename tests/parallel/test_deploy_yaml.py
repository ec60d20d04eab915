"""Every deploy/*.yaml is a valid Ray Serve config (Ray's own schema), its args are accepted by our
app builder's argument split and EngineArgs, and its devices and accelerator types are consistent.
Nothing is started."""
import importlib
from pathlib import Path

import pytest
import yaml

ray_serve_schema = pytest.importorskip("ray.serve.schema")

DEPLOY = sorted((Path(__file__).resolve().parents[2] / "deploy").glob("*.yaml"))


def test_there_are_deploy_configs():
    assert {p.name for p in DEPLOY} >= {"tiny-cpu.yaml", "scout-mi300x.yaml", "maverick-fp8-mi300x.yaml",
                                        "maverick-fp8-h200.yaml"}


@pytest.mark.parametrize("path", DEPLOY, ids=lambda p: p.name)
def test_deploy_yaml_validates(path):
    import ray.util.accelerators.accelerators as ray_accel

    from amd_llama4.engine.llm_engine import EngineArgs
    from amd_llama4.serve.deployment import split_args

    raw = yaml.safe_load(path.read_text())
    schema = ray_serve_schema.ServeDeploySchema.model_validate(raw)
    assert schema.applications, f"{path.name}: no applications"
    known_accel = {v for k, v in vars(ray_accel).items() if k[:1].isupper() and isinstance(v, str)}
    for app in schema.applications:
        module, _, attr = app.import_path.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), f"{path.name}: {app.import_path}"
        engine_args, _ = split_args(app.args)
        args = EngineArgs(**engine_args)  # unknown or ill-typed keys fail here, as in the replica
        gpu = args.tensor_parallel_size > 1 and "cpu" not in path.name
        assert args.device == ("cuda" if gpu else "cpu"), f"{path.name}: args.device {args.device!r}"
        if gpu:  # the workers' bundles name the same GPU type as the replica
            assert args.accelerator_type in known_accel, f"{path.name}: args.accelerator_type"
        for dep in app.deployments:
            opts = dep.ray_actor_options.model_dump(exclude_unset=True) if dep.ray_actor_options else {}
            accel = opts.get("accelerator_type")
            if gpu:
                assert accel in known_accel, f"{path.name}: {dep.name}.ray_actor_options.accelerator_type {accel!r}"
                # the replica holds no GPU: the engine's workers take one each
                assert opts.get("num_gpus", 0) == 0
            if "mi3" in path.name:
                assert accel.startswith("AMD-Instinct-"), path.name
                env = (app.runtime_env or {}).get("env_vars", {})
                assert env.get("RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES") == "1", path.name
