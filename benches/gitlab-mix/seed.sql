-- More rows in the demo's GitLab tables (tests/fixtures/gitlab.sql) for benches/compare.sh's
-- "mix" workload, with the foreign-key indexes GitLab has, so reads are index lookups and
-- writes spread over many rows. Run as superuser in gitlabhq_production on the main primary.
SET ROLE gitlab;
INSERT INTO namespaces (name, path) SELECT 'group-' || g, 'group-' || g FROM generate_series(6, 1000) g;
INSERT INTO users (name, username) SELECT 'User ' || g, 'user' || g FROM generate_series(6, 10000) g;
INSERT INTO projects (name, namespace_id) SELECT 'project-' || g, 1 + g % 1000 FROM generate_series(6, 10000) g;
INSERT INTO members (name, user_id, source_id)
    SELECT 'member-' || g, 1 + (g * 7919) % 10000, 1 + g % 10000 FROM generate_series(6, 30000) g;
INSERT INTO issues (name, project_id) SELECT 'issue-' || g, 1 + g % 10000 FROM generate_series(6, 50000) g;
INSERT INTO ci_pipelines (name, project_id, status)
    SELECT 'pipeline-' || g, 1 + g % 10000, 'success' FROM generate_series(6, 50000) g;
INSERT INTO ci_stages (name, pipeline_id) SELECT 'stage-' || g, 1 + g % 50000 FROM generate_series(6, 100000) g;
INSERT INTO ci_builds (name, stage_id, status)
    SELECT 'build-' || g, 1 + g % 100000, 'success' FROM generate_series(6, 200000) g;
CREATE INDEX ON projects (namespace_id);
CREATE INDEX ON members (source_id);
CREATE INDEX ON issues (project_id);
CREATE INDEX ON ci_pipelines (project_id);
CREATE INDEX ON ci_stages (pipeline_id);
CREATE INDEX ON ci_builds (stage_id);
CREATE INDEX ON ci_job_artifacts (job_id);
RESET ROLE;
ANALYZE;
