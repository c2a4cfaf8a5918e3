"""Only what pyproject.toml cannot say: the top-level ``conf/`` folder ships as the package ``ssl_dr.conf``."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["ssl_dr", "ssl_dr.*"]), "ssl_dr.conf"], package_dir={"ssl_dr.conf": "conf"})
