from raytune_ft.cli import run

run()
