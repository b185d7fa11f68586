"""Side-by-side benchmarks of sd_cli against its peers on the same weights (`python -m benchmarks`).
Not part of the installed package: they import diffusers, a test-only dependency."""
