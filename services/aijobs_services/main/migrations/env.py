from aijobs_services.kit.migrations_env import run

run()
