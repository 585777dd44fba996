"""Site datasets: what the site declares and how it is read into arrays."""
