"""Tests of the trials package."""
