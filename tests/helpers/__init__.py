"""Helpers shared by the tests (no test module imports another): tiny models and their
files, digits folders, a toy network for the samplers."""
