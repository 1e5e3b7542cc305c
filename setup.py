"""Packaging shim: the metadata is in pyproject.toml (PEP 621); this file only lets tools that still
call `python setup.py ...` build the same package."""
from setuptools import setup

setup()
