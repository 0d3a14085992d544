"""semnb: few-shot inspection of electron-microscope images, taught in notebooks.

Start with `semnb.print_env()` and notebook 00_quickstart. On your own images:
`model = semnb.fit("segment", support)`, `model.save(folder)`, `semnb.load_model(folder)`,
`semnb.predict(model, images_folder, out_folder)`. `semnb.evaluate(task, images, **options)`
runs one task's method against its baselines (docs/ARCHITECTURE.md maps the package).
"""
from semnb.env import print_env
from semnb.tasks import evaluate

__version__ = "0.1.0"
__all__ = ["evaluate", "fit", "load_model", "predict", "print_env", "__version__"]


def fit(task: str, data, **options):
    """Fit `task`'s method on `data` (see `semnb.fitting.fit`); imported on first use, so `import semnb` stays light."""
    from semnb.fitting import fit as fit_task

    return fit_task(task, data, **options)


def load_model(folder, device: str = "auto", precision: str | None = None):
    """The model saved in `folder` (see `semnb.model_folder.load_model`)."""
    from semnb.model_folder import load_model as load

    return load(folder, device=device, precision=precision)


def predict(model, images, out_dir, **options):
    """Run `model` over `images` into `out_dir` (see `semnb.predictions.predict`): maps, table, report; resumable."""
    from semnb.predictions import predict as run

    return run(model, images, out_dir, **options)
