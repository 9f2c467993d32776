-- GitLab-like mix: a runner finishes a job (a gitlab_ci write transaction).
\set bid random(1, 200000)
BEGIN;
SELECT id, status FROM ci_builds WHERE id = :bid FOR UPDATE;
UPDATE ci_builds SET status = 'success' WHERE id = :bid;
INSERT INTO ci_job_artifacts (name, job_id, size) VALUES ('trace', :bid, 4096);
COMMIT;
