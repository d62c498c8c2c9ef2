"""The bundled text-to-SQL database (a small company) and questions with gold queries."""

from __future__ import annotations

SCHEMA = """\
CREATE TABLE departments (
  id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL, budget INTEGER NOT NULL
);
CREATE TABLE employees (
  id INTEGER PRIMARY KEY, name TEXT NOT NULL, department_id INTEGER REFERENCES departments(id),
  title TEXT NOT NULL, salary INTEGER NOT NULL, hired TEXT NOT NULL
);
CREATE TABLE projects (
  id INTEGER PRIMARY KEY, name TEXT NOT NULL, department_id INTEGER REFERENCES departments(id),
  started TEXT NOT NULL
);
CREATE TABLE assignments (
  employee_id INTEGER REFERENCES employees(id), project_id INTEGER REFERENCES projects(id),
  hours INTEGER NOT NULL
);
"""

DATA = """\
INSERT INTO departments VALUES
  (1, 'Engineering', 'Berlin', 900000), (2, 'Sales', 'Paris', 400000),
  (3, 'Research', 'Berlin', 650000), (4, 'Support', 'Lisbon', 150000);
INSERT INTO employees VALUES
  (1, 'Ada', 1, 'Engineer', 98000, '2019-03-01'), (2, 'Grace', 1, 'Lead', 120000, '2016-07-15'),
  (3, 'Linus', 1, 'Engineer', 91000, '2021-11-02'), (4, 'Marie', 3, 'Scientist', 105000,
  '2018-01-20'), (5, 'Alan', 3, 'Scientist', 99000, '2022-05-09'), (6, 'Coco', 2, 'Manager',
  87000, '2017-09-30'), (7, 'Dario', 2, 'Associate', 52000, '2023-02-14'), (8, 'Eva', 2,
  'Associate', 55000, '2020-06-01'), (9, 'Femi', 4, 'Agent', 41000, '2021-01-11'), (10, 'Gus',
  4, 'Agent', 43000, '2019-12-05'), (11, 'Hana', 1, 'Engineer', 95000, '2023-08-21');
INSERT INTO projects VALUES
  (1, 'Compiler', 1, '2021-01-01'), (2, 'Search', 1, '2022-03-15'),
  (3, 'Fusion', 3, '2020-09-01'), (4, 'Outreach', 2, '2023-01-10'),
  (5, 'Helpdesk', 4, '2022-06-30');
INSERT INTO assignments VALUES
  (1, 1, 120), (2, 1, 40), (3, 2, 200), (11, 2, 80), (1, 2, 30), (4, 3, 300), (5, 3, 250),
  (2, 3, 20), (6, 4, 90), (7, 4, 160), (9, 5, 110), (10, 5, 95), (3, 1, 60);
"""

QUESTIONS: list[tuple[str, str]] = [
    ("How many employees are there?", "SELECT COUNT(*) FROM employees"),
    (
        "List the names of the employees in the Engineering department.",
        "SELECT e.name FROM employees e JOIN departments d ON e.department_id = d.id "
        "WHERE d.name = 'Engineering'",
    ),
    (
        "What is the average salary in each department? Give the department name and average.",
        "SELECT d.name, AVG(e.salary) FROM employees e JOIN departments d "
        "ON e.department_id = d.id GROUP BY d.name",
    ),
    (
        "Which department has the largest budget?",
        "SELECT name FROM departments ORDER BY budget DESC LIMIT 1",
    ),
    (
        "Which employees were hired after 2021-01-01?",
        "SELECT name FROM employees WHERE hired > '2021-01-01'",
    ),
    (
        "How many hours were logged on each project? Give the project name and total hours.",
        "SELECT p.name, SUM(a.hours) FROM projects p JOIN assignments a ON a.project_id = p.id "
        "GROUP BY p.name",
    ),
    (
        "Which employees are not assigned to any project?",
        "SELECT name FROM employees WHERE id NOT IN (SELECT employee_id FROM assignments)",
    ),
    (
        "Who is the highest-paid employee?",
        "SELECT name FROM employees ORDER BY salary DESC LIMIT 1",
    ),
    (
        "How many projects are run by departments in each city? Give the city and the count.",
        "SELECT d.city, COUNT(*) FROM projects p JOIN departments d ON p.department_id = d.id "
        "GROUP BY d.city",
    ),
    (
        "Which employees earn more than the average salary?",
        "SELECT name FROM employees WHERE salary > (SELECT AVG(salary) FROM employees)",
    ),
    (
        "Which departments have more than two employees?",
        "SELECT d.name FROM departments d JOIN employees e ON e.department_id = d.id "
        "GROUP BY d.id HAVING COUNT(*) > 2",
    ),
    (
        "List the employees in order of salary, highest first.",
        "SELECT name FROM employees ORDER BY salary DESC",
    ),
]
