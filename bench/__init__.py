"""Harnesses, not product: the serving benchmark (`driftloop bench serve`) and the chaos
soak (`driftloop bench chaos`). They drive `serving/` from outside and ship in no image."""
