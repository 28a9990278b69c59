"""The pure core: session tracking and room planning, no I/O."""
