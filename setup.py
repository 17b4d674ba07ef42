"""Ships the repo's top-level ``configs/`` inside the package as ``srtlab/configs`` (metadata: pyproject.toml).

The one thing pyproject.toml cannot say: the found ``srtlab*`` packages plus a package mapped from another folder.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["srtlab*"]), "srtlab.configs"], package_dir={"srtlab.configs": "configs"})
