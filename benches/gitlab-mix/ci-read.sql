-- GitLab-like mix: a pipelines page (gitlab_ci reads, outside a transaction).
\set pid random(1, 10000)
SELECT id, status FROM ci_pipelines WHERE project_id = :pid ORDER BY id DESC LIMIT 5;
SELECT b.id, b.name, b.status FROM ci_builds b JOIN ci_stages s ON s.id = b.stage_id
    JOIN ci_pipelines p ON p.id = s.pipeline_id WHERE p.project_id = :pid LIMIT 50;
