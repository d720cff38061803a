"""rich views shared by the commands."""
