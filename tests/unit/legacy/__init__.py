"""The planners as they were before the fleet-scale rewrite (0.1.6), kept verbatim to compare plans."""
