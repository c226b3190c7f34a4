"""HTTP resources, one module per area of the OCI Distribution Spec."""
