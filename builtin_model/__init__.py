"""sd_cli's own small model: the procedural shapes it is trained on and scored with (shapes.py),
its training script (train.py) and its evaluation (evaluate.py). Not part of the installed
package; the trained weights ship in sd_cli/data."""
