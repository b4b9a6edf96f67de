"""The gRPC servicer of credvault.v1.MonitorsService (locations, engines, monitors, results): each method
authenticates, translates, calls the domain and translates back; errors become status codes in
:mod:`vault_service.api.status`."""

from __future__ import annotations

from credvault.v1 import monitors_pb2 as mpb
from credvault.v1 import monitors_pb2_grpc as mgrpc
from vault_service.api import convert
from vault_service.api.authenticated import Authenticated, Context
from vault_service.monitors import MonitorService
from vault_service.results import ResultService
from vault_service.tokens import TokenService


class MonitorsServicer(Authenticated, mgrpc.MonitorsServiceServicer):
    def __init__(self, tokens: TokenService, monitors: MonitorService, results: ResultService) -> None:
        super().__init__(tokens)
        self._monitors = monitors
        self._results = results

    async def CreateLocation(self, request: mpb.CreateLocationRequest, context: Context) -> mpb.CreateLocationResponse:
        principal = await self._principal(context)
        loc = await self._monitors.create_location(principal, request.location.id, request.location.name)
        return mpb.CreateLocationResponse(location=loc)

    async def ListLocations(self, request: mpb.ListLocationsRequest, context: Context) -> mpb.ListLocationsResponse:
        principal = await self._principal(context)
        return mpb.ListLocationsResponse(locations=await self._monitors.list_locations(principal))

    async def DeleteLocation(self, request: mpb.DeleteLocationRequest, context: Context) -> mpb.DeleteLocationResponse:
        principal = await self._principal(context)
        await self._monitors.delete_location(principal, request.id)
        return mpb.DeleteLocationResponse()

    async def AddEngine(self, request: mpb.AddEngineRequest, context: Context) -> mpb.AddEngineResponse:
        principal = await self._principal(context)
        row = await self._monitors.add_engine(principal, request.location_id, request.engine_id)
        return mpb.AddEngineResponse(engine=convert.engine(row, None))

    async def ListEngines(self, request: mpb.ListEnginesRequest, context: Context) -> mpb.ListEnginesResponse:
        principal = await self._principal(context)
        rows = await self._monitors.list_engines(principal, request.location_id)
        return mpb.ListEnginesResponse(engines=[convert.engine(r, head) for r, head in rows])

    async def RevokeEngine(self, request: mpb.RevokeEngineRequest, context: Context) -> mpb.RevokeEngineResponse:
        principal = await self._principal(context)
        row = await self._monitors.revoke_engine(principal, request.location_id, request.engine_id)
        return mpb.RevokeEngineResponse(engine=convert.engine(row, None))

    async def CreateMonitor(self, request: mpb.CreateMonitorRequest, context: Context) -> mpb.CreateMonitorResponse:
        principal = await self._principal(context)
        return mpb.CreateMonitorResponse(monitor=await self._monitors.create(principal, request.monitor))

    async def GetMonitor(self, request: mpb.GetMonitorRequest, context: Context) -> mpb.GetMonitorResponse:
        principal = await self._principal(context)
        return mpb.GetMonitorResponse(monitor=await self._monitors.get(principal, request.id))

    async def ListMonitors(self, request: mpb.ListMonitorsRequest, context: Context) -> mpb.ListMonitorsResponse:
        principal = await self._principal(context)
        page = await self._monitors.list(
            principal, request.location_id, request.credential_id, request.page_size, request.page_token
        )
        return mpb.ListMonitorsResponse(monitors=page.items, next_page_token=page.next_page_token)

    async def UpdateMonitor(self, request: mpb.UpdateMonitorRequest, context: Context) -> mpb.UpdateMonitorResponse:
        principal = await self._principal(context)
        monitor = await self._monitors.update(principal, request.monitor, request.expected_version)
        return mpb.UpdateMonitorResponse(monitor=monitor)

    async def SetMonitorEnabled(
        self, request: mpb.SetMonitorEnabledRequest, context: Context
    ) -> mpb.SetMonitorEnabledResponse:
        principal = await self._principal(context)
        monitor = await self._monitors.set_enabled(principal, request.id, request.enabled)
        return mpb.SetMonitorEnabledResponse(monitor=monitor)

    async def DeleteMonitor(self, request: mpb.DeleteMonitorRequest, context: Context) -> mpb.DeleteMonitorResponse:
        principal = await self._principal(context)
        await self._monitors.delete(principal, request.id)
        return mpb.DeleteMonitorResponse()

    async def GetResults(self, request: mpb.GetResultsRequest, context: Context) -> mpb.GetResultsResponse:
        principal = await self._principal(context)
        results = await self._results.recent(
            principal, request.monitor_id, request.limit, request.location_id, request.include_screenshots
        )
        return mpb.GetResultsResponse(results=results)
