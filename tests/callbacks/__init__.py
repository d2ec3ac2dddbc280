"""Tests of the compression steps in callbacks/ and of the plan that orders them."""
