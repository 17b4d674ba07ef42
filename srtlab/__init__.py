"""srtlab: Self-Rewarded Training of language models (see README.md)."""

from pathlib import Path


def config_dir() -> Path:
    """The shipped Hydra configs: ``srtlab/configs`` in an installed wheel (setup.py maps the repo's top-level
    ``configs/`` there), the repo's ``configs/`` in a checkout or an editable install."""
    here = Path(__file__).resolve().parent
    installed = here / "configs"
    return installed if installed.is_dir() else here.parent / "configs"
