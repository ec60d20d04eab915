"""Placeholder until the CMake build class lands (native-kernels work): pure-Python install."""
from setuptools import setup

setup()
