-- GitLab-like mix: an issue is edited (a gitlab_main write transaction).
\set iid random(1, 50000)
BEGIN;
SELECT id, name, project_id FROM issues WHERE id = :iid FOR UPDATE;
UPDATE issues SET name = name WHERE id = :iid;
COMMIT;
