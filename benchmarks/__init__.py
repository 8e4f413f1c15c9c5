"""Benchmarks of the mesh and of the raw grpc.aio baseline it is compared against."""
