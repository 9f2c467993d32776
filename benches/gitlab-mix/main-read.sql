-- GitLab-like mix: a project page (gitlab_main reads, outside a transaction).
\set pid random(1, 10000)
SELECT p.id, p.name, n.path FROM projects p JOIN namespaces n ON n.id = p.namespace_id WHERE p.id = :pid;
SELECT u.id, u.username FROM members m JOIN users u ON u.id = m.user_id WHERE m.source_id = :pid LIMIT 20;
SELECT id, name FROM issues WHERE project_id = :pid ORDER BY id DESC LIMIT 20;
