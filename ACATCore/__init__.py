"""ACATCore: the ACAT engine."""
