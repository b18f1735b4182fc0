-- One server, one database per store: Dagster's instance, MLflow's tracking/registry, and
-- Optuna's studies (which every trial worker shares). Runs once, on an empty volume.
CREATE DATABASE dagster;
CREATE DATABASE mlflow;
CREATE DATABASE optuna;
