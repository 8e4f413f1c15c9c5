"""Generated from protos/ by gen/generate.py. Do not edit."""
