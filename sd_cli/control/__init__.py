"""ControlNet: hints, units and how they steer the UNet."""
