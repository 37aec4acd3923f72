"""Packaging beyond pyproject.toml: ``resources/`` goes into the wheel as the package
``studio_resources`` (whole folders, so files added there ship without editing this)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["studio*", "nodes*"]), "studio_resources"],
    package_dir={"studio_resources": "resources"},
    package_data={"*": ["*.json"], "studio_resources": ["**/*"]},
    exclude_package_data={"studio_resources": ["**/__pycache__/*", "**/*.pyc"]},
)
