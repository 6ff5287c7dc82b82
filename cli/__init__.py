"""Thin command-line front ends over the Python API (`embedstore`, `heads`)."""
