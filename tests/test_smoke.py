from .agentproc import AgentProcess


def test_agent_starts_and_answers(agent: AgentProcess) -> None:
    with agent.client() as http:
        response = http.get("/v1/status/leader")
    assert response.status_code == 200
    assert response.json().endswith(":8300")
